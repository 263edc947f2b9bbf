// The storage account that holds only the deployment package: Flex Consumption runs the app from a blob
// container, and `azd deploy` uploads it there through the platform, which writes with the deployment
// identity. Keeping it apart from the host's storage lets the runtime identity own the host's blobs (as the
// Functions host needs) without any right on the code it runs. Identity-only, like the main account.
param name string
param location string
param tags object

@description('Private networking: no public network access; reachable through a private endpoint only.')
param privateNetworking bool = false

@description('Replication, as the main account (storage.bicep).')
param skuName string = 'Standard_GRS'

@description('Blob container that holds the deployment package.')
param containerName string = 'app-package'

resource account 'Microsoft.Storage/storageAccounts@2023-05-01' = {
  name: name
  location: location
  tags: tags
  kind: 'StorageV2'
  sku: {
    name: skuName
  }
  properties: {
    accessTier: 'Hot'
    allowSharedKeyAccess: false
    defaultToOAuthAuthentication: true
    allowBlobPublicAccess: false
    allowCrossTenantReplication: false
    isLocalUserEnabled: false
    isSftpEnabled: false
    minimumTlsVersion: 'TLS1_2'
    supportsHttpsTrafficOnly: true
    publicNetworkAccess: privateNetworking ? 'Disabled' : 'Enabled'
    networkAcls: {
      defaultAction: privateNetworking ? 'Deny' : 'Allow'
      bypass: 'AzureServices'
    }
    encryption: {
      keySource: 'Microsoft.Storage'
      requireInfrastructureEncryption: true
      services: {
        blob: {
          enabled: true
          keyType: 'Account'
        }
        file: {
          enabled: true
          keyType: 'Account'
        }
      }
    }
  }
}

resource blobService 'Microsoft.Storage/storageAccounts/blobServices@2023-05-01' = {
  parent: account
  name: 'default'
  properties: {
    deleteRetentionPolicy: {
      enabled: true
      days: 7
    }
    containerDeleteRetentionPolicy: {
      enabled: true
      days: 7
    }
  }
}

resource container 'Microsoft.Storage/storageAccounts/blobServices/containers@2023-05-01' = {
  parent: blobService
  name: containerName
  properties: {
    publicAccess: 'None'
  }
}

output name string = account.name
output id string = account.id
output containerName string = container.name
output containerUrl string = '${account.properties.primaryEndpoints.blob}${container.name}'
